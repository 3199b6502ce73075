#!/usr/bin/python3
"""PACS end-to-end helper for the integration tests (Debian's python3-pydicom, numpy).

  generate OUT --ct N --mr N --cr N    a realistic study set: a CT series of 512x512 16-bit
                                       slices, an MR series of 256x256 slices, CR images of
                                       about 10 MB; one file per instance
  verify-orthanc URL SRC               every instance of SRC is in Orthanc (REST at URL) and the
                                       file Orthanc returns is byte-identical
  verify-dir DIR SRC                   every instance of SRC was stored under DIR (storescp) with
                                       the same SOP instance UID and pixel data

Prints one JSON object; exit status 0 when everything matches, 1 otherwise.
"""
import io
import json
import os
import sys
import urllib.request

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT, MR, CR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.1"


def instance(study, series, sop_class, modality, number, rows, cols, rng, patient):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = patient
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20261125", "101500", "ACC" + study[-6:]
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, number
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.integers(0, 4096, size=(rows, cols), dtype=np.uint16).tobytes()
    return ds


def generate(out, ct, mr, cr):
    rng = np.random.default_rng(20261125)
    os.makedirs(out, exist_ok=True)
    n = 0
    plan = [("CT", CT, 512, 512, ct, ("Müller^Jürgen", "PAT0001")), ("MR", MR, 256, 256, mr, ("Müller^Jürgen", "PAT0001")),
            ("CR", CR, 2500, 2048, cr, ("Østergård^Åse", "PAT0002"))]
    study = generate_uid()
    for modality, sop_class, rows, cols, count, patient in plan:
        series = generate_uid()
        for i in range(count):
            ds = instance(study, series, sop_class, modality, i + 1, rows, cols, rng, patient)
            ds.save_as(os.path.join(out, f"{modality}{i + 1:04d}.dcm"), write_like_original=False)
            n += 1
    print(json.dumps({"instances": n}))


def sources(src):
    out = {}
    for name in sorted(os.listdir(src)):
        p = os.path.join(src, name)
        with open(p, "rb") as f:
            data = f.read()
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = (name, data)
    return out


def verify_orthanc(url, src):
    want = sources(src)
    ids = json.load(urllib.request.urlopen(url + "/instances", timeout=60))
    seen, bad = set(), []
    for oid in ids:
        data = urllib.request.urlopen(f"{url}/instances/{oid}/file", timeout=120).read()
        got = pydicom.dcmread(io.BytesIO(data))
        uid = str(got.SOPInstanceUID)
        seen.add(uid)
        # Every element of the data set (group 0002, the file meta header, is the receiver's own).
        if uid not in want or got != pydicom.dcmread(io.BytesIO(want[uid][1])):
            bad.append(want.get(uid, (uid,))[0])
    missing = sorted(want[u][0] for u in set(want) - seen)
    report = {"expected": len(want), "in_orthanc": len(ids), "mismatched": bad, "missing": missing}
    print(json.dumps(report))
    return 0 if not bad and not missing and len(ids) == len(want) else 1


def verify_dir(d, src):
    want = {}
    for uid, (name, data) in sources(src).items():
        want[uid] = (name, pydicom.dcmread(io.BytesIO(data)))
    seen, bad = set(), []
    for root, _, files in os.walk(d):
        for f in files:
            ds = pydicom.dcmread(os.path.join(root, f))
            uid = str(ds.SOPInstanceUID)
            seen.add(uid)
            # Every element of the data set (the file meta header is the receiver's own).
            if uid not in want or ds != want[uid][1]:
                bad.append(f)
    missing = sorted(want[u][0] for u in set(want) - seen)
    print(json.dumps({"expected": len(want), "stored": len(seen), "mismatched": bad, "missing": missing}))
    return 0 if not bad and not missing else 1


def main(argv):
    if argv[:1] == ["generate"]:
        args = dict(zip(argv[2::2], argv[3::2]))
        generate(argv[1], int(args.get("--ct", 0)), int(args.get("--mr", 0)), int(args.get("--cr", 0)))
        return 0
    if argv[:1] == ["verify-orthanc"]:
        return verify_orthanc(argv[1], argv[2])
    if argv[:1] == ["verify-dir"]:
        return verify_dir(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
