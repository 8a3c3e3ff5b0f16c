"""``qt``: Slicer's PythonQt module inside Slicer, a PySide6 stand-in elsewhere (tests, scripts).

Only the API both share is used by the panel code: widget classes, ``qt.Qt`` enums and
``signal.connect(callable)``.
"""

from __future__ import annotations

import types

try:
    import qt  # Slicer's PythonQt

    BINDING = "PythonQt"
except ImportError:
    from PySide6 import QtCore, QtGui, QtWidgets

    qt = types.SimpleNamespace(**{
        name: getattr(module, name)
        for module in (QtCore, QtGui, QtWidgets)
        for name in dir(module)
        if name.startswith("Q")
    })
    BINDING = "PySide6"



def value(widget, name: str):
    """Read a Qt property the same way in both bindings.

    PythonQt exposes Q_PROPERTYs as attributes (``combo.currentData``); PySide6 as methods
    (``combo.currentData()``).
    """
    attr = getattr(widget, name)
    return attr() if callable(attr) else attr


__all__ = ["BINDING", "qt", "value"]
