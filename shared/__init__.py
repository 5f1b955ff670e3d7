"""Code two or more services truly share: settings, topic names, the app factory, event-time logic."""

from shared.compiled_modules import prefer_compiled

# Before any hot module is imported: the mypyc build of this package's hot modules, if current.
prefer_compiled(__name__, __path__)
