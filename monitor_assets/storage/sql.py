"""Quoting for SQL built from config: identifiers and string literals, never pasted raw."""


def quote_ident(name: str) -> str:
    """An identifier, quoted so quotes or semicolons in it stay part of the name."""
    return '"' + str(name).replace('"', '""') + '"'


def sql_str(value: str) -> str:
    """A string literal."""
    return "'" + str(value).replace("'", "''") + "'"
