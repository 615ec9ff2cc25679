"""The operator console: a tailnet-only web app (JSON API under `/api/v1`, live events, pages).

`app.build` makes the aiohttp application (built, never run here); the daemon serves it on its
console listener. It knows who asks (`identity`), and reads and writes only through the
services handed to it (`services`); it never imports `db`.
"""
