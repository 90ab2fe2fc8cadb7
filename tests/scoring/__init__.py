"""Tests of the batch scorer and the PACS tool (``scoring/``)."""
