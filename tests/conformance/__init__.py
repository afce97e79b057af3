"""The conformance suite: one set of scenarios, run over every path to an application.

A package (``conformance.*``) so that its modules' names can't collide with the
test modules beside it in tests/.
"""
