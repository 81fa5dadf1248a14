"""Scanner-console integration: the Python API (:class:`~edgesr.integrate.api.Enhancer`), DICOM derived
series (:mod:`edgesr.integrate.dicom`) and, later, the network services a console speaks."""
