"""Postgres: the pool, the migrations runner, the embedded cluster and the query wrappers.

Each `<area>.py` here is the only caller of `sql/<area>.sql` and turns its rows into models.
"""
