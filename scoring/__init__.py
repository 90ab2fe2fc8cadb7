"""Batch scoring: archives and PACS studies scored in-process with the service's own domain step.

It sits above both the torch core (``retina/``) and the service (``backend/``) and may import
either; neither imports it. Stages:

* ``scoring.batch``: :class:`~scoring.batch.BatchScorer` (the models, gate and engine of one
  worker, loaded as the service loads them) and where the work runs (a local process pool or Ray);
* ``scoring.inputs``: which files an input names; ``scoring.rows``: one row per file;
  ``scoring.sinks``: Parquet and CSV output, resumable;
* ``scoring.cli`` (``python -m scoring``): the command line over those;
* ``scoring.pacs`` (``python -m scoring.pacs``): a PACS study over DICOMweb (``scoring.dicomweb``)
  scored as one exam (``scoring.exam_scoring``), its SR and PDF stored back.
"""
