from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Device(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_UNSPECIFIED: _ClassVar[Device]
    DEVICE_DESKTOP: _ClassVar[Device]
    DEVICE_MOBILE: _ClassVar[Device]
    DEVICE_TABLET: _ClassVar[Device]
    DEVICE_TV: _ClassVar[Device]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_VIEW: _ClassVar[EventType]
    EVENT_TYPE_CLICK: _ClassVar[EventType]
    EVENT_TYPE_CART: _ClassVar[EventType]
    EVENT_TYPE_PURCHASE: _ClassVar[EventType]
    EVENT_TYPE_RATING: _ClassVar[EventType]
DEVICE_UNSPECIFIED: Device
DEVICE_DESKTOP: Device
DEVICE_MOBILE: Device
DEVICE_TABLET: Device
DEVICE_TV: Device
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_VIEW: EventType
EVENT_TYPE_CLICK: EventType
EVENT_TYPE_CART: EventType
EVENT_TYPE_PURCHASE: EventType
EVENT_TYPE_RATING: EventType

class Context(_message.Message):
    __slots__ = ("timestamp", "hour", "weekday", "device", "country", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    HOUR_FIELD_NUMBER: _ClassVar[int]
    WEEKDAY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    timestamp: float
    hour: int
    weekday: int
    device: Device
    country: str
    extra: _containers.ScalarMap[str, str]
    def __init__(self, timestamp: _Optional[float] = ..., hour: _Optional[int] = ..., weekday: _Optional[int] = ..., device: _Optional[_Union[Device, str]] = ..., country: _Optional[str] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Filters(_message.Message):
    __slots__ = ("include_categories", "exclude_categories", "min_price", "max_price", "exclude_item_ids", "in_stock_only")
    INCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MIN_PRICE_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    IN_STOCK_ONLY_FIELD_NUMBER: _ClassVar[int]
    include_categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_categories: _containers.RepeatedScalarFieldContainer[str]
    min_price: float
    max_price: float
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    in_stock_only: bool
    def __init__(self, include_categories: _Optional[_Iterable[str]] = ..., exclude_categories: _Optional[_Iterable[str]] = ..., min_price: _Optional[float] = ..., max_price: _Optional[float] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., in_stock_only: _Optional[bool] = ...) -> None: ...

class Diversity(_message.Message):
    __slots__ = ("max_per_creator",)
    LAMBDA_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_CREATOR_FIELD_NUMBER: _ClassVar[int]
    max_per_creator: int
    def __init__(self, max_per_creator: _Optional[int] = ..., **kwargs) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "session_item_ids", "context", "filters", "exclude_consumed", "diversity", "explain", "timings")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    SESSION_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    session_item_ids: _containers.RepeatedScalarFieldContainer[str]
    context: Context
    filters: Filters
    exclude_consumed: bool
    diversity: Diversity
    explain: bool
    timings: bool
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., session_item_ids: _Optional[_Iterable[str]] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., exclude_consumed: _Optional[bool] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ..., explain: _Optional[bool] = ..., timings: _Optional[bool] = ...) -> None: ...

class FeatureContribution(_message.Message):
    __slots__ = ("feature", "contribution")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    feature: str
    contribution: float
    def __init__(self, feature: _Optional[str] = ..., contribution: _Optional[float] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("top_features", "mmr_penalty", "ranker_score", "relevance")
    TOP_FEATURES_FIELD_NUMBER: _ClassVar[int]
    MMR_PENALTY_FIELD_NUMBER: _ClassVar[int]
    RANKER_SCORE_FIELD_NUMBER: _ClassVar[int]
    RELEVANCE_FIELD_NUMBER: _ClassVar[int]
    top_features: _containers.RepeatedCompositeFieldContainer[FeatureContribution]
    mmr_penalty: float
    ranker_score: float
    relevance: float
    def __init__(self, top_features: _Optional[_Iterable[_Union[FeatureContribution, _Mapping]]] = ..., mmr_penalty: _Optional[float] = ..., ranker_score: _Optional[float] = ..., relevance: _Optional[float] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "sources", "explanation")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    sources: _containers.RepeatedScalarFieldContainer[str]
    explanation: Explanation
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., sources: _Optional[_Iterable[str]] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    ms: float
    def __init__(self, stage: _Optional[str] = ..., ms: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "bundle_version", "request_id", "timings", "cold_start", "trending_country")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    TRENDING_COUNTRY_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    bundle_version: str
    request_id: str
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    cold_start: bool
    trending_country: str
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., bundle_version: _Optional[str] = ..., request_id: _Optional[str] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., cold_start: _Optional[bool] = ..., trending_country: _Optional[str] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k", "filters")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    filters: Filters
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("items", "bundle_version", "request_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    bundle_version: str
    request_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., bundle_version: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("user_id", "item_id", "type", "timestamp")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    type: EventType
    timestamp: float
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., timestamp: _Optional[float] = ...) -> None: ...

class RecordEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class RecordEventsResponse(_message.Message):
    __slots__ = ("accepted", "new_users", "request_id", "duplicates", "not_kept")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEW_USERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    NOT_KEPT_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    new_users: int
    request_id: str
    duplicates: int
    not_kept: int
    def __init__(self, accepted: _Optional[int] = ..., new_users: _Optional[int] = ..., request_id: _Optional[str] = ..., duplicates: _Optional[int] = ..., not_kept: _Optional[int] = ...) -> None: ...

class ItemUpdate(_message.Message):
    __slots__ = ("item_id", "in_stock", "price")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    IN_STOCK_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    in_stock: bool
    price: float
    def __init__(self, item_id: _Optional[str] = ..., in_stock: _Optional[bool] = ..., price: _Optional[float] = ...) -> None: ...

class UpdateItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ItemUpdate]
    def __init__(self, items: _Optional[_Iterable[_Union[ItemUpdate, _Mapping]]] = ...) -> None: ...

class UpdateItemsResponse(_message.Message):
    __slots__ = ("updated", "request_id")
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    updated: int
    request_id: str
    def __init__(self, updated: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...
