"""The embedded development stack (README.md here): imported from the checkout, never part of the product."""
