"""Streamlit helpers of the results browser: configuration, cached loaders, page skeleton, charts."""
