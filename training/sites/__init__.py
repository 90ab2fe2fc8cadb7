"""Site profiles: one clinic's temperature and operating points, fitted on its own graded photos.

``profile`` fits and writes one (``python -m training.site_profile``, the thin command at the
top of ``training/``); ``check`` measures whether one holds on held-out patients
(``python -m training.sites.check``). The service reads the files with ``retina.site_profile``.
"""
