import XCTest
@testable import ObjectStore

/// SigV4 against AWS's published vectors: the aws-sig-v4-test-suite (credentials AKIDEXAMPLE,
/// 2015-08-30T12:36:00Z, us-east-1, service "service") and the S3 examples of "Signature
/// Calculations for the Authorization Header" (AKIAIOSFODNN7EXAMPLE, 2013-05-24, examplebucket).
/// The expected signatures are AWS's; any change in canonicalisation breaks them.
final class SigV4Tests: XCTestCase {
    let suite = S3Credentials(accessKey: "AKIDEXAMPLE", secretKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    let suiteScope = SigV4Scope(date: UTCTime(seconds: 1_440_938_160), region: "us-east-1", service: "service")
    let s3 = S3Credentials(accessKey: "AKIAIOSFODNN7EXAMPLE", secretKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    let s3Scope = SigV4Scope(date: UTCTime(seconds: 1_369_353_600), region: "us-east-1")
    let empty = PayloadHash.sha256(hex: PayloadHash.emptySHA256)

    private func suiteRequest(_ method: String, _ path: String, query: [(String, String)] = [],
                              extra: [(String, String)] = [], payload: PayloadHash? = nil) -> SigV4Signature {
        let headers = [("Host", "example.amazonaws.com")] + extra + [("X-Amz-Date", "20150830T123600Z")]
        let r = SigV4Request(method: method, path: path, query: query.map { ($0.0, $0.1) },
                             headers: headers.map { ($0.0, $0.1) }, payload: payload ?? empty)
        return SigV4.sign(r, credentials: suite, scope: suiteScope)
    }

    func testTimeFormats() {
        XCTAssertEqual(suiteScope.date.amzDate, "20150830T123600Z")
        XCTAssertEqual(suiteScope.date.day, "20150830")
        XCTAssertEqual(s3Scope.date.amzDate, "20130524T000000Z")
        XCTAssertEqual(suiteScope.date.iso8601, "2015-08-30T12:36:00Z")
        XCTAssertEqual(UTCTime.parseISO8601("2015-08-30T12:36:00Z"), suiteScope.date)
        XCTAssertEqual(UTCTime.parseISO8601("2015-08-30T12:36:00.000Z"), suiteScope.date)
        XCTAssertNil(UTCTime.parseISO8601("2015-08-30 12:36:00"))
        XCTAssertEqual(UTCTime.parseHTTPDate("Sun, 30 Aug 2015 12:36:00 GMT"), suiteScope.date)
        // 30 years of retention from a 29 February ends on 28 February, never a day early.
        let leap = UTCTime.parseISO8601("2024-02-29T10:00:00Z")!
        XCTAssertEqual(leap.addingYears(30).iso8601, "2054-02-28T10:00:00Z")
        XCTAssertEqual(suiteScope.date.addingYears(30).iso8601, "2045-08-30T12:36:00Z")
    }

    func testGetVanilla() {
        let s = suiteRequest("GET", "/")
        XCTAssertEqual(s.canonicalRequest, """
            GET
            /

            host:example.amazonaws.com
            x-amz-date:20150830T123600Z

            host;x-amz-date
            e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
            """)
        XCTAssertEqual(s.stringToSign, """
            AWS4-HMAC-SHA256
            20150830T123600Z
            20150830/us-east-1/service/aws4_request
            bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63
            """)
        XCTAssertEqual(s.authorization, "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    }

    func testPostVanilla() {
        XCTAssertEqual(suiteRequest("POST", "/").signature, "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")
    }

    func testQueryOrderAndEncoding() {
        // get-vanilla-query-order-key-case: sorted by name, upper case before lower case.
        XCTAssertEqual(suiteRequest("GET", "/", query: [("Param2", "value2"), ("Param1", "value1")]).signature,
                       "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
        // post-vanilla-query
        XCTAssertEqual(suiteRequest("POST", "/", query: [("Param1", "value1")]).signature,
                       "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11")
        // get-vanilla-utf8-query: the name's UTF-8 bytes percent-encoded.
        let utf8 = suiteRequest("GET", "/", query: [("\u{1234}", "bar")])
        XCTAssertTrue(utf8.canonicalRequest.contains("\n%E1%88%B4=bar\n"), utf8.canonicalRequest)
        XCTAssertEqual(utf8.signature, "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04")
        XCTAssertEqual(SigV4.canonicalQuery([("b", "2"), ("a", "x/y z"), ("A", ""), ("a", "1")]), "A=&a=1&a=x%2Fy%20z&b=2")
    }

    func testPathEncoding() {
        XCTAssertEqual(suiteRequest("GET", "/\u{1234}").signature, "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85")
        XCTAssertEqual(suiteRequest("GET", "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz").signature,
                       "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f")
        XCTAssertEqual(suiteRequest("GET", "/example space/").signature,
                       "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741")
        XCTAssertEqual(suiteRequest("GET", "/example/$delete").signature,
                       "a853c9b21b528b19643d00910d35b83a10c366a10833ceefb45edd6c80e40f27")
        XCTAssertEqual(SigV4.encodePath("/b/1.2.840/IM 0001+é.dcm"), "/b/1.2.840/IM%200001%2B%C3%A9.dcm")
    }

    func testHeaderCanonicalisation() {
        // post-header-key-sort
        XCTAssertEqual(suiteRequest("POST", "/", extra: [("My-Header1", "value1")]).signature,
                       "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c")
        // get-header-value-trim: leading space trimmed, inner runs collapsed.
        let trim = suiteRequest("GET", "/", extra: [("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")])
        XCTAssertEqual(trim.signedHeaders, "host;my-header1;my-header2;x-amz-date")
        XCTAssertEqual(trim.signature, "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736")
        // get-header-key-duplicate: values joined in order.
        let dup = suiteRequest("GET", "/", extra: [("My-Header1", "value2"), ("My-Header1", "value2"), ("My-Header1", "value1")])
        XCTAssertEqual(dup.signature, "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea")
    }

    func testSignedPayload() {
        // post-x-www-form-urlencoded: the body's SHA-256 is the last line.
        let body = PayloadHash.of(Array("Param1=value1".utf8))
        XCTAssertEqual(body.value, "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e")
        let s = suiteRequest("POST", "/", extra: [("Content-Type", "application/x-www-form-urlencoded")], payload: body)
        XCTAssertEqual(s.signature, "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a")
    }

    // MARK: S3's own examples (x-amz-content-sha256 signed, paths encoded once)

    func testS3GetObjectWithRange() {
        let r = SigV4Request(method: "GET", path: "/test.txt",
                             headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"),
                                       ("x-amz-content-sha256", PayloadHash.emptySHA256), ("x-amz-date", "20130524T000000Z")],
                             payload: empty)
        let s = SigV4.sign(r, credentials: s3, scope: s3Scope)
        XCTAssertEqual(s.authorization, "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    func testS3PutObject() {
        let body = PayloadHash.of(Array("Welcome to Amazon S3.".utf8))
        XCTAssertEqual(body.value, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        let r = SigV4Request(method: "PUT", path: "/test$file.text",
                             headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                                       ("x-amz-date", "20130524T000000Z"), ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                                       ("x-amz-content-sha256", body.value)],
                             payload: body)
        let s = SigV4.sign(r, credentials: s3, scope: s3Scope)
        XCTAssertTrue(s.canonicalRequest.hasPrefix("PUT\n/test%24file.text\n\n"), s.canonicalRequest)
        XCTAssertEqual(s.signature, "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    }

    func testS3ListObjectsAndBareSubresource() {
        func sign(_ query: [(String, String)]) -> String {
            let r = SigV4Request(method: "GET", path: "/", query: query.map { ($0.0, $0.1) },
                                 headers: [("Host", "examplebucket.s3.amazonaws.com"),
                                           ("x-amz-content-sha256", PayloadHash.emptySHA256), ("x-amz-date", "20130524T000000Z")],
                                 payload: empty)
            return SigV4.sign(r, credentials: s3, scope: s3Scope).signature
        }
        XCTAssertEqual(sign([("prefix", "J"), ("max-keys", "2")]), "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
        // "?lifecycle": a sub-resource without a value is signed as "lifecycle=" (like "?uploads").
        XCTAssertEqual(sign([("lifecycle", "")]), "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
    }

    func testUnsignedPayloadIsSignedAsSuchAndChangesTheSignature() {
        let headers: [(String, String)] = [("host", "127.0.0.1:7480"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                                           ("x-amz-date", "20130524T000000Z")]
        let unsigned = SigV4.sign(SigV4Request(method: "PUT", path: "/b/k", headers: headers.map { ($0.0, $0.1) }, payload: .unsigned),
                                  credentials: s3, scope: s3Scope)
        XCTAssertTrue(unsigned.canonicalRequest.hasSuffix("\nUNSIGNED-PAYLOAD"))
        let signed = SigV4.sign(SigV4Request(method: "PUT", path: "/b/k", headers: headers.map { ($0.0, $0.1) }, payload: .of([1, 2, 3])),
                                credentials: s3, scope: s3Scope)
        XCTAssertNotEqual(unsigned.signature, signed.signature)
    }

    func testCredentialsNeverPrintTheSecret() {
        XCTAssertFalse("\(s3)".contains("EXAMPLEKEY"))
        XCTAssertTrue("\(s3)".contains("AKIAIOSFODNN7EXAMPLE"))
    }
}
