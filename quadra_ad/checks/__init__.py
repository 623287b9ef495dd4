"""Every check made before work starts, in one room: the command line (group choices, override
syntax, plugins, composition), config values, the working directory, the dataset folder and the
exported model a run will load. A mistake becomes one :class:`~quadra_ad.errors.QuadraADError`
line, in about a second, before torch or anomalib are imported.
"""
