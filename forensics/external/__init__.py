"""Other projects' programs that the tests, the benchmarks and the DICOM-side leaks drive:
DCMTK, GDCM and OpenJPH encoders (:mod:`~forensics.external.dicomtools`) and a real Orthanc
PACS (:mod:`~forensics.external.orthanc`). The product never imports this package.
"""
