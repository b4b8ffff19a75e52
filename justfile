# millionws tasks. `just --list` shows them; each is a one-liner over scripts/ and .venv/.

set shell := ["bash", "-uc"]

# install into .venv and run the server (extra flags go to `millionws serve`)
serve *FLAGS:
    ./scripts/serve {{FLAGS}}

# install test dependencies and run lint + the whole suite (what CI runs)
test *ARGS:
    ./scripts/test {{ARGS}}

# ruff over the whole repository
lint:
    .venv/bin/ruff check .
