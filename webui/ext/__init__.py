"""ext layer; see DESIGN.md for what it may import."""
