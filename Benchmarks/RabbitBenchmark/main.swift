print("RabbitMQ benchmark: not written yet")
