"""The package's version: a module of its own, so that modules inside the package (upstream.py's
User-Agent, cli.py's --version) read it without importing the package while it loads."""

__version__ = "0.1.0"
