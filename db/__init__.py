"""vitx review store (SQLAlchemy 2.0): reviewers, ratings, audit trail. Never imports streamlit."""
