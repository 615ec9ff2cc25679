"""Retrieval: documents split into passages with their context, the word and meaning indexes,
fusion of the two rankings, and the choice between retrieving and caching a whole collection.
Agents import it; it never imports them."""
