"""Thin, literal wrappers around the syscalls and host tools labkit needs.

Each function keeps the kernel's semantics, states the man page's preconditions in its docstring and
raises ``OSError`` with the errno. Cleverness lives one layer up.
"""
