"""The bundled pages (plain HTML + JS, same origin, no build step): the chat page at ``/`` (its script and
style, and marked and DOMPurify vendored in static/vendor, under ``/assets/``) and the interactive API docs at
``/docs`` (Swagger UI, vendored in static/swagger-ui, on ``/openapi.json``).

Their files are served by these views, not by a static route: the app's own ``/static`` route shadows
the blueprint's, and a static route would need a key once keys exist (it declares no policy).
"""

from __future__ import annotations

from flask import Blueprint, abort, redirect, request, send_from_directory

from blueprints import route

bp = Blueprint("page", __name__, static_folder="static")

# What /assets/<asset> serves to the chat page: the file under static/ and its type. Nothing else is reachable.
PAGE_ASSETS = {
    "chat.js": ("chat.js", "text/javascript"),
    "chat.css": ("chat.css", "text/css"),
    "marked.umd.js": ("vendor/marked.umd.js", "text/javascript"),
    "purify.min.js": ("vendor/purify.min.js", "text/javascript"),
}

# The chat page shows model output: only its own files may run or style it, images only from here (a Markdown
# image cannot send the conversation to another host), and it talks only to this origin.
CHAT_PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

# What /docs/<asset> serves: the file under static/ and its type. Nothing else is reachable there.
DOCS_ASSETS = {
    "swagger-ui-bundle.js": ("swagger-ui/swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("swagger-ui/swagger-ui.css", "text/css"),
    "docs.js": ("docs.js", "text/javascript"),
}


def _static(filename: str, mimetype: str | None = None):  # noqa: ANN202
    assert bp.static_folder is not None
    response = send_from_directory(bp.static_folder, filename, mimetype=mimetype)
    response.headers["Cache-Control"] = "no-cache"  # revalidated (ETag, Last-Modified): an upgrade shows at once
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _listed(assets: dict[str, tuple[str, str]], asset: str):  # noqa: ANN202
    """A file of ``assets`` (public name → file and media type) by its public name; 404 for anything else."""
    if asset not in assets:
        abort(404)
    filename, mimetype = assets[asset]
    return _static(filename, mimetype)


@route(bp, "/", ["GET"], open=True)
def index():  # noqa: ANN201
    response = _static("index.html")
    response.headers["Content-Security-Policy"] = CHAT_PAGE_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@route(bp, "/assets/<asset>", ["GET"], open=True)
def page_asset(asset: str):  # noqa: ANN201
    return _listed(PAGE_ASSETS, asset)


@route(bp, "/docs", ["GET"], open=True)
def docs():  # noqa: ANN201
    if request.path.endswith("/"):  # /docs/: its relative URLs would resolve under /docs/docs/
        return redirect("../docs")  # relative, so it holds behind a path prefix too
    return _static("docs.html")


@route(bp, "/docs/<asset>", ["GET"], open=True)
def docs_asset(asset: str):  # noqa: ANN201
    return _listed(DOCS_ASSETS, asset)
