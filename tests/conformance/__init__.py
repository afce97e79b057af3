"""The conformance suite: one set of scenarios run over every path to an app."""
