"""frontalab: face-frontalization research at scale.

`frontalab.models` and `frontalab.losses` are the shared library (pure torch);
`frontalab.data` prepares and reads datasets; `frontalab.platform` is the trainer,
tracking, services, sweeps and registry around them.
"""

__version__ = "0.1.0"
