"""The built-in dashboard: a page served at ``/`` that reads the public API only.

The page signs in with an API key (kept in the browser's session storage,
never in a URL or a cookie) and draws its charts with plotly.js, served
from the ``plotly`` Python package's own copy: no CDN, nothing third-party
in this repository.
"""
