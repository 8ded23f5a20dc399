"""wmkit: prove where AI output came from -- text watermarks, embedding watermarks, fingerprints.

>>> from wmkit.keys import SecretKey
>>> from wmkit.watermark.text import KGW
>>> scheme = KGW(SecretKey.generate(), gamma=0.25, delta=2.0)
"""

__version__ = "0.1.0"
