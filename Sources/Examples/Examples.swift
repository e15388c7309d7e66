import BrokerAPI
