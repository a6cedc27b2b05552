"""Compiler driver."""
