#ifndef BROKERKIT_CRDKAFKA_SHIM_H
#define BROKERKIT_CRDKAFKA_SHIM_H
#include <librdkafka/rdkafka.h>
#endif
