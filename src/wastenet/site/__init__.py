"""The site loop: model versions beside the decision log, and learning from the site's reviewed items."""
