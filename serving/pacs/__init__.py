"""PACS connectivity: a DICOM C-STORE listener and an on-disk outbox for its results."""
