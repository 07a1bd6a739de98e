"""labkit's version, in a module of its own so that every layer can name it without importing the package's
public face (``labkit/__init__.py``).

>>> from labkit.version import __version__
>>> __version__ >= "0.1"
True
"""
__version__ = "0.1.0"
