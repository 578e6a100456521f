"""detkit's version, in a module of its own: the graph cache's key reads it without importing the
package's entry points."""

__version__ = "0.1.0"
