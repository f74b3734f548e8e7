"""tests/promql.py, the tokenizer tests/test_grafana.py reads the dashboard's queries with."""

from __future__ import annotations

import pytest

from tests import promql


def test_the_tokenizer_reads_names_matchers_and_grouping() -> None:
    query = promql.parse(
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{job=~"x|y"}[$__range])))'
        " * 1e3 / ignoring(instance) group_left b offset 5m and on() c_total"
    )
    assert [s.name for s in query.selectors] == ["a_bucket", "b", "c_total"]
    assert query.selectors[0].matchers == (("job", "=~", "x|y"),)
    assert query.grouping == {"le", "route", "instance"}
    with pytest.raises(ValueError):
        promql.parse('{__name__="a"}')
