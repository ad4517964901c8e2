"""leaktrace's forensics: the product around the mark, and the lab that measures it.

The product, what hospital IT and investigators run:
:mod:`~forensics.export` (mark and record copies), :mod:`~forensics.deidentify` and
:mod:`~forensics.burnedin` (before the mark), :mod:`~forensics.trace` with
:mod:`~forensics.register` (find whose copy a leak is) and :mod:`~forensics.report` (the
evidence report), :mod:`forensics.ledger` (who received what, tamper-evident) and
:mod:`forensics.gateway` (the DICOM gateway in front of a PACS).

The lab, what researchers and the tests use: :mod:`forensics.leaks` (leak simulations),
:mod:`forensics.bench` (the benchmark harness and its peers) and :mod:`forensics.external`
(other projects' programs: DCMTK, GDCM, Orthanc). The product never imports the lab
(``tests/test_layout.py`` checks it).

The command line, one module per user group, is :mod:`forensics.cli`; ``leaktrace`` runs
:func:`forensics.entry.main`.
"""
