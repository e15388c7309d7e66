#ifndef BROKERKIT_CRDKAFKA_SHIM_H
#define BROKERKIT_CRDKAFKA_SHIM_H
#include <librdkafka/rdkafka.h>
#include <stdint.h>

/* Swift cannot call C variadics: rd_kafka_producev wrapped with fixed arguments.
 * On success librdkafka owns `headers`; on failure the caller still does. */
static inline rd_kafka_resp_err_t bk_produce(rd_kafka_t *rk, const char *topic, int32_t partition,
                                             const void *payload, size_t len, const void *key, size_t keylen,
                                             rd_kafka_headers_t *headers, int64_t timestamp_ms, void *opaque) {
    if (headers != NULL) {
        return rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_VALUE((void *)payload, len),
                                 RD_KAFKA_V_KEY(key, keylen), RD_KAFKA_V_HEADERS(headers),
                                 RD_KAFKA_V_TIMESTAMP(timestamp_ms), RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
    }
    return rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_VALUE((void *)payload, len),
                             RD_KAFKA_V_KEY(key, keylen), RD_KAFKA_V_TIMESTAMP(timestamp_ms),
                             RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
}

/* Field access Swift would otherwise need pointer gymnastics for. */
static inline int32_t bk_tp_partition(const rd_kafka_topic_partition_list_t *list, int i) { return list->elems[i].partition; }
static inline const char *bk_tp_topic(const rd_kafka_topic_partition_list_t *list, int i) { return list->elems[i].topic; }
static inline int64_t bk_tp_offset(const rd_kafka_topic_partition_list_t *list, int i) { return list->elems[i].offset; }
static inline void bk_tp_set_offset(rd_kafka_topic_partition_list_t *list, int i, int64_t offset) { list->elems[i].offset = offset; }
static inline rd_kafka_resp_err_t bk_tp_err(const rd_kafka_topic_partition_list_t *list, int i) { return list->elems[i].err; }

/* librdkafka's in-process mock cluster, for tests (fault injection). */
#include <librdkafka/rdkafka_mock.h>
#endif
