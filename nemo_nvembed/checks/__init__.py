"""Checks shared by the commands: user errors and argument/path checks done before heavy work."""
