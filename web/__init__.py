"""The web console: an ASGI app (Starlette, Jinja2 templates) over the same service calls and
access rules as the bot (``generation.access``), with Discord's OAuth2 for login.

It never imports ``discord`` nor ``bot``: the composition root (``imagine-bot web``) builds the
runtime and hands the app what it needs (``WebContext``).
"""
