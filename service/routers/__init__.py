"""One APIRouter per resource; `deps` holds the dependencies and input parsing they share."""
