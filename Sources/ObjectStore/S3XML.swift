import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif

/// A parsed XML element: S3's answers are small documents (errors, list pages, upload ids), so
/// a tree of name, text and children is all the client needs.
struct XMLNode: Sendable, Equatable {
    var name: String
    var text: String
    var children: [XMLNode]

    func child(_ name: String) -> XMLNode? { children.first { $0.name == name } }
    func all(_ name: String) -> [XMLNode] { children.filter { $0.name == name } }
    func value(_ name: String) -> String? { child(name)?.text }

    static func parse(_ bytes: [UInt8]) -> XMLNode? {
        let builder = TreeBuilder()
        let parser = XMLParser(data: Data(bytes))
        parser.delegate = builder
        guard parser.parse(), let root = builder.root else { return nil }
        return root
    }
}

private final class TreeBuilder: NSObject, XMLParserDelegate {
    var stack: [XMLNode] = []
    var root: XMLNode?

    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?,
                qualifiedName: String?, attributes: [String: String] = [:]) {
        stack.append(XMLNode(name: name, text: "", children: []))
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        guard !stack.isEmpty else { return }
        stack[stack.count - 1].text += string
    }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        guard let done = stack.popLast() else { return }
        if stack.isEmpty { root = done } else { stack[stack.count - 1].children.append(done) }
    }
}

/// S3's XML documents, read and written.
enum S3XML {
    /// `<Error><Code>…</Code><Message>…</Message></Error>`; nil when the body is not one.
    static func error(_ body: [UInt8]) -> (code: String, message: String)? {
        guard let root = XMLNode.parse(body), root.name == "Error" else { return nil }
        return (root.value("Code") ?? "", root.value("Message") ?? "")
    }

    static func uploadId(_ body: [UInt8]) -> String? {
        guard let root = XMLNode.parse(body), root.name == "InitiateMultipartUploadResult" else { return nil }
        return root.value("UploadId").flatMap { $0.isEmpty ? nil : $0 }
    }

    /// CompleteMultipartUpload can answer 200 with an `<Error>` body (the S3 API's trap): the
    /// caller checks for one first, then takes the ETag.
    static func completedETag(_ body: [UInt8]) -> String? {
        guard let root = XMLNode.parse(body), root.name == "CompleteMultipartUploadResult" else { return nil }
        return root.value("ETag").map(unquote)
    }

    static func listPage(_ body: [UInt8]) -> ListPage? {
        guard let root = XMLNode.parse(body), root.name == "ListBucketResult" else { return nil }
        var objects: [ObjectInfo] = []
        for c in root.all("Contents") {
            guard let key = c.value("Key"), let size = c.value("Size").flatMap({ Int64($0) }) else { return nil }
            objects.append(ObjectInfo(key: key, size: size, etag: unquote(c.value("ETag") ?? ""),
                                      lastModified: c.value("LastModified").flatMap(UTCTime.parseISO8601)))
        }
        let truncated = root.value("IsTruncated") == "true"
        let next = root.value("NextContinuationToken")
        return ListPage(objects: objects, continuation: truncated ? next : nil)
    }

    static func completeMultipart(_ parts: [CompletedPart]) -> [UInt8] {
        var s = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        for p in parts.sorted(by: { $0.number < $1.number }) {
            s += "<Part><PartNumber>\(p.number)</PartNumber><ETag>\"\(escape(p.etag))\"</ETag></Part>"
        }
        s += "</CompleteMultipartUpload>"
        return Array(s.utf8)
    }

    static func retention(_ r: Retention) -> [UInt8] {
        Array(("<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>\(r.mode.rawValue)</Mode>"
            + "<RetainUntilDate>\(r.until.iso8601)</RetainUntilDate></Retention>").utf8)
    }

    static func unquote(_ s: String) -> String {
        s.count >= 2 && s.hasPrefix("\"") && s.hasSuffix("\"") ? String(s.dropFirst().dropLast()) : s
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
