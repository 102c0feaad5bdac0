"""The TradingModel operator: kopf handlers over plain reconcile functions."""

GROUP = "trading.io"
VERSION = "v1alpha1"
PLURAL = "tradingmodels"
KIND = "TradingModel"
MANAGER = "tradingmodel-operator"
