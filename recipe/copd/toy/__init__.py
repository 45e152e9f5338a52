"""The embedded default: two arithmetic skills, a warm-started tiny Qwen3 (``copd.tiny``), its evaluation, its
experts baseline and its closing report."""
