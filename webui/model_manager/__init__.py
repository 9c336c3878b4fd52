"""model_manager layer; see DESIGN.md for what it may import."""
