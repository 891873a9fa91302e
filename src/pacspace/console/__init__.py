"""The customer's console (`pacspace ui`): its bills, their evidence and its invoices checked against them, in a
browser, from the monitor's verified copy on the customer's own machine (docs/console.md)."""
