package llmapi.example;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import okhttp3.MediaType;
import okhttp3.OkHttpClient;
import okhttp3.Request;
import okhttp3.RequestBody;
import okhttp3.Response;
import okhttp3.sse.EventSource;
import okhttp3.sse.EventSourceListener;
import okhttp3.sse.EventSources;

/**
 * Streams an answer from llm_api with okhttp-sse, as the lesson's Java caller does: an
 * OpenAI-shaped body {"model", "stream": true, "messages"}, tokens printed as they arrive,
 * and the "finish" and "error" event types handled.
 *
 * <p>Usage: {@code mvn -q compile exec:java -Dexec.args="http://127.0.0.1:8000 'Hello!'"}
 */
public final class ChatStream {
    private static final ObjectMapper MAPPER = new ObjectMapper();

    public static void main(String[] args) throws Exception {
        String baseUrl = args.length > 0 ? args[0] : "http://127.0.0.1:8000";
        String prompt = args.length > 1 ? args[1] : "What is the capital of France?";

        ObjectNode body = MAPPER.createObjectNode();
        body.put("model", "chatglm3-6b");
        body.put("stream", true);
        body.putArray("messages").addObject().put("role", "user").put("content", prompt);

        // The server sends headers and a comment at once, then heartbeats: a 60 s read timeout is plenty.
        OkHttpClient client = new OkHttpClient.Builder().readTimeout(60, TimeUnit.SECONDS).build();
        Request request = new Request.Builder()
                .url(baseUrl + "/chat/new/message")
                .post(RequestBody.create(MAPPER.writeValueAsString(body),
                        MediaType.get("application/json; charset=utf-8")))
                .build();

        CountDownLatch done = new CountDownLatch(1);
        EventSourceListener listener = new EventSourceListener() {
            @Override
            public void onEvent(EventSource eventSource, String id, String type, String data) {
                try {
                    JsonNode json = MAPPER.readTree(data);
                    if (type == null) { // a token: {"text", "message_id"}
                        System.out.print(json.get("text").asText());
                        System.out.flush();
                    } else if (type.equals("finish")) {
                        System.out.println();
                        System.err.println("finish: " + json.get("finish_reason").asText() + ", usage " + json.get("usage"));
                        eventSource.cancel();
                        done.countDown();
                    } else if (type.equals("error")) {
                        System.err.println("error: " + json.get("error").get("message").asText());
                        eventSource.cancel();
                        done.countDown();
                    }
                } catch (Exception e) {
                    onFailure(eventSource, e, null);
                }
            }

            @Override
            public void onClosed(EventSource eventSource) {
                done.countDown();
            }

            @Override
            public void onFailure(EventSource eventSource, Throwable t, Response response) {
                System.err.println("failure: " + (t != null ? t : "HTTP " + (response != null ? response.code() : "?")));
                done.countDown();
            }
        };
        EventSources.createFactory(client).newEventSource(request, listener);
        done.await(10, TimeUnit.MINUTES);
        client.dispatcher().executorService().shutdown();
        client.connectionPool().evictAll();
    }
}
