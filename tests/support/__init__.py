"""Helpers shared by the tests (servers, import graphs, CLI runners); not tests themselves."""
