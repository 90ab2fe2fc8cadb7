"""Stage 1, data: dataset readers, patient-disjoint splits, prepared pixels, batches.

``tables`` (disk -> :class:`ImageTable`) -> ``splits`` -> ``pixels`` (uint8, cached) ->
``bundle`` (a config's :class:`DataBundle`) -> ``sampling`` and ``loaders`` (how the
training split is drawn into batches). ``volumes`` writes Kermany B-scans as multi-frame DICOM.
"""
