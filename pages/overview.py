"""Overview page: what vitx computes (from the explainer registry) and the intended use."""

import pandas as pd
import streamlit as st

from vitx_core import list_explainers

st.title("vitx — ViT explanations for chest X-rays")
st.caption("Research tool for reviewing model explanations. Not for diagnostic use.")

rows = [{"key": i.name, "method": i.title, "pass": "on demand" if i.on_demand else "one-pass",
         "options": ", ".join(f"{k}={v['default']}" for k, v in i.params.items()),
         "paper": i.paper_url} for i in list_explainers()]
st.subheader("Explainers")
st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True,
             column_config={"paper": st.column_config.LinkColumn("paper")})
