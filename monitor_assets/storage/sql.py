"""Quoting for SQL built from config: identifiers and string literals, never pasted raw."""


def quote_ident(name: str) -> str:
    """An identifier, quoted so quotes or semicolons in it stay part of the name."""
    return '"' + str(name).replace('"', '""') + '"'


def sql_str(value: str) -> str:
    """A string literal."""
    return "'" + str(value).replace("'", "''") + "'"


SEGMENT_MISSING = "(missing)"  # a segment column's NULL, as segment names spell it


def segment_key(cross: tuple[str, ...]) -> str:
    """A segmentation's key, as monitoring.segment_performance's `segment_by` spells it: 'market,device'."""
    return ",".join(cross)


SEGMENT_COLUMN = "__segment:"  # + segmentation key ('market,device'): a frame column holding each row's segment


def segment_picks(crosses, column_of: dict[str, str]) -> list[str]:
    """SELECT items naming each row's segment per segmentation (`crosses`) whose columns are all in `column_of`,
    as columns SEGMENT_COLUMN + its key."""
    return [f"{segment_sql(cross, column_of)} AS {quote_ident(SEGMENT_COLUMN + segment_key(cross))}"
            for cross in crosses if all(n in column_of for n in cross)]


def segment_sql(cross: tuple[str, ...], column_of: dict[str, str]) -> str:
    """A row's segment name as SQL: `market=DE` or `market=DE, device=mobile` (NULL reads `(missing)`), as
    monitoring.segment_performance, monitoring.history and the evaluation store spell it; `column_of`: name ->
    SQL of its column."""
    return " || ', ' || ".join(f"{sql_str(name + '=')} || coalesce(CAST({column_of[name]} AS VARCHAR), "
                               f"{sql_str(SEGMENT_MISSING)})" for name in cross)
