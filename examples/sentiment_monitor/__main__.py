from examples.sentiment_monitor.main import main

main()
