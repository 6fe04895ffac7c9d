"""The package version, importable by engines without importing the facade."""

__version__ = "0.1.0.dev0"
