"""The service's endpoints, one router per resource: each module's `router(state) -> APIRouter` builds its
routes over the app's shared `state.ServeState` (request schemas depend on the server's limits, so routers
are built per app). `serve/app.py` includes them in order, one line each."""
