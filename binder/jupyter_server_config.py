# Binder's Jupyter server (binder/postBuild copies this beside jupyter_config.json). The settings that are
# Python, not JSON: the Voila prelaunch hook that gives the app's page its `_xsrf` cookie before Voila starts
# streaming it, so the page's shutdown request on closing is accepted and a closed tab's kernel stops at once
# (without it: "'_xsrf' argument missing from POST", and the kernel stays until culled). The same hook as
# pictaxon.app.set_xsrf_cookie, written out here so the server process does not import the app.
def _set_xsrf_cookie(handler, notebook=None, cwd=None):
    handler.xsrf_token          # reading it sets the cookie while the response can still take one

c.VoilaConfiguration.prelaunch_hook = _set_xsrf_cookie
